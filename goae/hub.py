"""Where weights come from and whether to trust a folder now live in goae.weights.resolve and goae.weights.checks;
these names stay importable from here for older importers."""
from goae.weights.checks import (BOUNDS, COMPONENTS, WEIGHTS_NAME, PipelineInfo, check_component_folder, check_config,
                                 check_finite, check_pipeline_folder, describe_mismatch, meta_module, parameters_on_meta,
                                 safetensors_shapes)
from goae.weights.errors import DomainMismatchWarning, WeightsFolderError, WeightsNotFoundError
from goae.weights.resolve import HOW_TO_GET_WEIGHTS, resolve_pretrained

__all__ = ["BOUNDS", "COMPONENTS", "WEIGHTS_NAME", "PipelineInfo", "check_component_folder", "check_config",
           "check_finite", "check_pipeline_folder", "describe_mismatch", "meta_module", "parameters_on_meta",
           "safetensors_shapes", "DomainMismatchWarning", "WeightsFolderError", "WeightsNotFoundError",
           "HOW_TO_GET_WEIGHTS", "resolve_pretrained"]
