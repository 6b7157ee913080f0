"""Independent implementations every Brian2 number is checked against (numpy, float64).

`oracle`
    The backprop oracle: forward pass, exact gradients, losses.
`euler`
    The relaxation integrated in plain numpy (the rules' batched references
    are in `arsim.rules`, composed from `arsim.rules.primitives`).
`torch_peer`
    Exact AR training in PyTorch, a peer for `arsim bench` (optional).
"""
