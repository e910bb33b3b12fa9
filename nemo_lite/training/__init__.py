"""Training for both designs: config (:mod:`.config`), manifests and batches (:mod:`.data`), the loss
(:mod:`.loss`), the loop (:mod:`.loop`), checkpoints (:mod:`.checkpointing`), Canary export (:mod:`.export`) and
the ``nemo-lite train`` command (:mod:`.command`). Imports stay lazy: ``import nemo_lite.training`` is cheap."""
