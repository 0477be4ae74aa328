"""The FineTuneJob trainer and the `finetune` CLI."""
