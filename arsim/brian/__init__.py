"""The Brian2 side: every rule's network as equations with units, compiled by cpp_standalone.

`neuron`
    The one neuron type (rate units; every role is a parameter of it).
`network`
    The builder: a `Topology` (the build key of an `arsim.spec.Experiment`)
    into NeuronGroups, Synapses and monitors, scheduled by slot and order.
`cpp_projection`
    The dense projections and their plasticity as generated C++ over the
    synaptic arrays (CBLAS for the batch-parallel copies).
`devices`
    Compiling once per topology and running with run-time arrays
    (standalone), or Brian2's runtime target.
"""
