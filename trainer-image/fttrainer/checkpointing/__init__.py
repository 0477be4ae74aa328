"""Training checkpoints: what makes one count, where they are kept, and resuming from them.

    protocol.py   the rules, pure: names, MANIFEST.json (written last), the job identity,
                  retention, the best one
    store.py      CheckpointStore: those rules on S3 or a local directory (upload, commit,
                  list what counts, download sha256-checked, retain)
    resume.py     where a run starts: the newest complete checkpoint, agreed by every rank

The Trainer's side (upload after each save, then report it) is callbacks.CheckpointUpload.
Activation checkpointing, which trades compute for memory inside a step and has nothing to
do with these, is model/recompute.py.
"""
