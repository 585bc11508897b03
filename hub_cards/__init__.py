"""Jinja templates of the model and Space cards (shipped in the wheel as ``bcos_zoo.hub_cards``)."""
