"""What every part of the pipeline stands on: params, artefacts and their records, errors, safe Keras
I/O, the one TensorFlow import, the stage runner's process faults, plots and tables."""
