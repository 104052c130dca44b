"""The model card now lives in goae.weights.cards; these names stay importable from here for older importers."""
from goae.weights.cards import CARD_NAME, Provenance, current_command, model_card, write_model_card

__all__ = ["CARD_NAME", "Provenance", "current_command", "model_card", "write_model_card"]
