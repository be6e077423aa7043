"""A trained classifier artifact, loaded for prediction and evaluation in one plain process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dcl_dist.data.batching import Tokenize
from dcl_dist.errors import DataError, ModelError
from dcl_dist.metrics import classification_metrics
from dcl_dist.models.artifact import Artifact, load_artifact
from dcl_dist.models.head import Classifier


@dataclass
class Predictor:
    model: Classifier
    tokenize: Tokenize
    class_names: list[str]
    device: torch.device

    @classmethod
    def load(cls, path: Path) -> Predictor:
        art: Artifact = load_artifact(path)
        if art.head is None:
            raise ModelError(
                f"{path}: this artifact ({art.meta.get('phase')}) has no classification head: point to a run's"
                " ft/artifact (encoder-only artifacts embed text; use sentence-transformers for that)"
            )
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = Classifier(art.encoder, art.head).to(device).eval()
        return cls(model, Tokenize(art.tokenizer, art.meta["max_length"]), art.class_names, device)

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(n, classes) softmax probabilities."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = {k: v.to(self.device) for k, v in self.tokenize(texts[start : start + batch_size]).items()}
            out.append(torch.softmax(self.model(batch["input_ids"], batch["attention_mask"]).float(), -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def predict(self, texts: list[str], batch_size: int = 64) -> list[tuple[str, dict[str, float]]]:
        """Per text: (label, {class: probability})."""
        proba = self.probabilities(texts, batch_size)
        return [
            (self.class_names[int(row.argmax())], {c: round(float(p), 6) for c, p in zip(self.class_names, row)})
            for row in proba
        ]

    def evaluate(self, texts: list[str], labels: list[str], batch_size: int = 64, source: str = "the data") -> dict:
        """Full classification metrics against string labels; labels the model never saw are an error naming
        `source`."""
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({label for label in labels if label not in index})
        if unknown:
            raise DataError(
                f"{source}: labels the model was not trained on: {', '.join(unknown[:10])}"
                f" (it knows: {', '.join(self.class_names)}): fix the labels or --label-field"
            )
        predictions = self.probabilities(texts, batch_size).argmax(-1).tolist()
        return classification_metrics([index[label] for label in labels], predictions, self.class_names, full=True)
