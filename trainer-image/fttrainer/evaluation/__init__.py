"""What a run measures besides the training loss.

- evaluator.py: what is scored when (the base before training, every evaluation, the
  final weights);
- metrics.py: formulas over plain values (perplexity, MCQ classification scores, BLEU,
  ROUGE-L, best scores) and the Trainer.log hooks;
- scoring.py: predictions from a model (MCQ letters by likelihood, greedy answers);
- generation.py: greedy decoding in eval mode;
- comparison.py: base-vs-tuned answers to the evaluation prompts;
- harness.py: lm-evaluation-harness tasks on the model in memory.
"""

from .evaluator import Evaluator

__all__ = ["Evaluator"]
