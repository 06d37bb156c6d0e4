"""Stages 2 and 3: what becomes what (``analyze``, driven by the op registry) and the graph
rewrite that applies it (``build_snn``)."""
from .analysis import Analysis, BiasTarget, Neuron, OpIssue, analyze
from .registry import Kind, Mark, classify, register, supported_ops
from .rewriter import SNN, NeuronParams, SpikingNeuron, build_snn

__all__ = ["Analysis", "BiasTarget", "Neuron", "OpIssue", "analyze", "Kind", "Mark", "classify",
           "register", "supported_ops", "SNN", "NeuronParams", "SpikingNeuron", "build_snn"]
