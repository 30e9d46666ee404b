"""Sharing trained models: timm Hub folders with a robustness card (``export``)."""
from .export import HubExport, export_hub, model_card, push_to_hub
