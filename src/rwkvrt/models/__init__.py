"""Model definitions: configs read from checkpoints and forward passes for any T."""
