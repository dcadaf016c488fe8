"""``bapo balance``: spend a user's budget of preference pairs between breadth (prompts) and depth (pairs per prompt).

After BPO (Wang et al., "Towards Balanced Preference Optimization between Knowledge Breadth and Depth in Alignment",
NAACL 2025, arXiv 2411.10914). :mod:`~bapo.balancing.candidates` builds each prompt's candidate pairs,
:mod:`~bapo.balancing.features` measures prompts and pairs with the model, :mod:`~bapo.balancing.select` chooses,
:mod:`~bapo.balancing.run` puts them together.
"""
