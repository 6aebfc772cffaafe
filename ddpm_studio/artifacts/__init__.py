"""What training leaves on disk and sampling reads back: run folders (``runs``), checkpoints
(``checkpoints``), the loaded model (``loaded``, ``loading``) and the diffusers format
(``diffusers_format``). Below training and sampling, above the engine."""
