"""SWIFT heads: the head format and its registry (heads), capture while sampling (capture), teacher-forced
rescoring (rescoring) and training features (features), training (training) and import of the authors' checkpoints
(official)."""
