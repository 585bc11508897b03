"""The ``image-explanation`` pipeline: labels and scores like ``image-classification``, and the model's exact
explanation of each label asked for. It travels with the weights (the config's ``custom_pipelines`` names it).

    pipe = pipeline("image-explanation", model="<org>/<bcos-model>", trust_remote_code=True)
    pipe("cat.jpg")            # [{"label", "score", "explanation": {"contributions", "rgba", "bias", "logit"}}, ...]
    pipe("cat.jpg", top_k=3, explain=3)        # explain each of the three top labels
    pipe("cat.jpg", labels=["tabby, tabby cat"])  # explain these labels, whatever their rank
"""

import torch
from transformers import Pipeline
from transformers.image_utils import load_image


class ImageExplanationPipeline(Pipeline):
    """Classify an image and explain the chosen labels with the B-cos model's own dynamic linear map."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, top_k=None, explain=None, labels=None, timeout=None):
        preprocess = {} if timeout is None else {"timeout": timeout}
        forward, postprocess = {}, {}
        if top_k is not None:
            postprocess["top_k"] = top_k
        if explain is not None:
            if not isinstance(explain, int) or explain < 0:
                raise ValueError(f"explain takes how many of the top labels to explain, an int >= 0; got {explain!r}.")
            forward["explain"] = postprocess["explain"] = explain
        if labels is not None:
            names = [labels] if isinstance(labels, str) else list(labels)
            indices = {name: int(index) for index, name in self.model.config.id2label.items()}
            unknown = [name for name in names if name not in indices]
            if unknown:
                raise ValueError(f"Unknown labels {unknown}; this model's labels are in model.config.id2label.")
            forward["targets"] = [indices[name] for name in names]
        return preprocess, forward, postprocess

    def preprocess(self, image, timeout=None):
        image = load_image(image, timeout=timeout)  # RGB; a one-channel model takes it in greyscale
        image = image.convert("L") if getattr(self.model.config, "num_channels", 3) == 1 else image
        return self.image_processor(images=image, return_tensors="pt")

    def _forward(self, model_inputs, explain=1, targets=None):
        """One forward pass for the scores, then one batched explanation of every label asked for, of every image
        (the pipeline's ``batch_size`` images at a time): each output has one row per image."""
        pixel_values = model_inputs["pixel_values"].to(self.model.device, self.model.dtype)
        logits = self.model(pixel_values=pixel_values).logits
        if targets is None:
            chosen = logits.argsort(dim=1, descending=True)[:, :explain]
        else:
            chosen = torch.tensor(targets, dtype=torch.long, device=logits.device).expand(len(logits), -1)
        rows = chosen.shape  # (images, explained labels per image)
        explanation = self.model.explain(pixel_values.repeat_interleave(rows[1], dim=0), target=chosen.flatten())
        contributions, rgba = explanation.contributions, explanation.rgba
        return {
            "logits": logits,
            "targets": chosen,
            "contributions": contributions.reshape(*rows, *contributions.shape[1:]),
            "rgba": rgba.reshape(*rows, *rgba.shape[1:]),
            "bias": explanation.bias.reshape(rows),
            "explained_logits": explanation.target_logits.reshape(rows),
        }

    def postprocess(self, model_outputs, top_k=5, explain=1):
        id2label = self.model.config.id2label
        logits, problem = model_outputs["logits"][0].float(), self.model.config.problem_type
        if problem == "regression":  # the scores image-classification gives: the logits themselves,
            probabilities = logits
        elif problem == "multi_label_classification" or len(logits) == 1:  # one sigmoid per label,
            probabilities = logits.sigmoid()
        else:  # or a softmax over the labels
            probabilities = logits.softmax(dim=-1)
        order = logits.argsort(descending=True).tolist()
        chosen = model_outputs["targets"][0].tolist()
        shown = order[:top_k] + [index for index in chosen if index not in order[:top_k]]
        results = []
        for index in shown:
            entry = {"label": id2label[index], "score": float(probabilities[index])}
            if index in chosen:
                row = chosen.index(index)
                entry["explanation"] = {
                    "contributions": model_outputs["contributions"][0, row].float().cpu().numpy(),
                    "rgba": model_outputs["rgba"][0, row].float().cpu().numpy(),
                    "bias": float(model_outputs["bias"][0, row]),
                    "logit": float(model_outputs["explained_logits"][0, row]),
                }
            results.append(entry)
        return results
