"""The zoo side: the recipe catalogue, one fine-tuning run from a recipe, model cards, the Hub, reproductions."""
