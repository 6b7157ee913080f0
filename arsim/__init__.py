"""arsim: Activation Relaxation as continuous-time Brian2 neuron dynamics."""

__version__ = "0.1.0"
