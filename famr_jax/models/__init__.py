"""Flax models and the functional interface the unlearning code uses.

Every model is a sequence of named *stages* (see ``famr_jax.models.base``):
``layer_names(model)`` lists them, their params live under top-level keys equal
to their names, and ``model.apply(variables, h, start=a, stop=b)`` runs stages
``a`` to ``b`` (defaults: first and last) on the input of stage ``a``. Stage
outputs are also sown as ``intermediates['stage_outputs'][name]``.
The algorithms never import a model class: they take the functions built here
(``apply_fn(params, x) -> logits``, feature, layer-input and tail functions) and
plain params dicts.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = create_model('mlp', num_classes=10, image_shape=(8, 8, 1))
  >>> layer_names(model)
  ('fc1', 'fc2', 'head')
  >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
  >>> count_params(params)
  17226
  >>> x = jnp.ones((2, 8, 8, 1))
  >>> h = make_layer_input_fn(model, 'head')(params, x)
  >>> h.shape
  (2, 64)
  >>> logits = make_tail_apply_fn(model, 'head')(params, h)
  >>> bool(jnp.allclose(logits, make_apply_fn(model)(params, x)))
  True
"""


# This package only re-exports: the zoo (famr_jax.models.zoo), the functional interface
# (famr_jax.models.functions) and the model classes, each in its own module.
from famr_jax.models.alexnet import AlexNet
from famr_jax.models.batchnorm import BatchNorm, BatchStats, batch_stats_of, has_batch_norm
from famr_jax.models.functions import (count_params, init_batch_stats, layer_names, make_apply_fn,
                                       make_apply_with_features_fn, make_feature_fn, make_layer_input_fn,
                                       make_tail_apply_fn, make_train_apply_fn, merge_params,
                                       recompute_batch_stats, split_params, tail_param_mask, with_batch_stats)
from famr_jax.models.karpathynet import KarpathyNet
from famr_jax.models.layers import Conv, conv_formulation, set_conv_formulation
from famr_jax.models.lenet5 import LeNet5
from famr_jax.models.logistic import LogisticRegression
from famr_jax.models.mlp import MLP
from famr_jax.models.resnet import ResNet
from famr_jax.models.vit import VIT_PRESETS, ViT, ViTConfig, auto_patch_size, vit_config
from famr_jax.models.zoo import MODEL_NAMES, RESNET_OVERRIDES, create_model, init_params

__all__ = [
    'MODEL_NAMES',
    'AlexNet',
    'BatchNorm',
    'BatchStats',
    'ResNet',
    'batch_stats_of',
    'has_batch_norm',
    'init_batch_stats',
    'make_train_apply_fn',
    'recompute_batch_stats',
    'with_batch_stats',
    'Conv',
    'KarpathyNet',
    'LeNet5',
    'LogisticRegression',
    'MLP',
    'ViT',
    'ViTConfig',
    'VIT_PRESETS',
    'auto_patch_size',
    'conv_formulation',
    'count_params',
    'create_model',
    'init_params',
    'layer_names',
    'make_apply_fn',
    'make_apply_with_features_fn',
    'make_feature_fn',
    'make_layer_input_fn',
    'make_tail_apply_fn',
    'merge_params',
    'set_conv_formulation',
    'split_params',
    'tail_param_mask',
    'vit_config',
]

