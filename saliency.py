"""The saliency map of DropMix: I_A = |dL/dX_A|, and the clean step that yields it for free.

Paper: Kong et al., "DropMix", EMNLP 2022, section 4.1, first paragraph: "each unit in I_A is
the magnitude of the derivative of classification loss w.r.t its corresponding feature in X_A,
found through back-propagation" (Simonyan et al., 2013).

X_A is the matrix of WORD embeddings, model.get_input_embeddings()(input_ids), shape (B, N, D).
It is fed to a Hugging Face model through `inputs_embeds`; the model adds the position and
token-type embeddings (and LayerNorm, dropout) itself, so they are never added twice here.

The one idea that makes DropMix cheap: a training step computes the clean loss's backward pass
anyway, and that same pass fills dL/dX_A. `clean_step` keeps it, so the saliency map costs no
extra forward or backward pass (a literal reading of the paper, and SSMix's published code,
spend one more of each per step). The clean pass runs in training mode, so I_A, and the mask
built from it, depend on that step's dropout draw.

Imports torch only (the model is any Hugging Face sequence classifier), so the file can be
copied alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's keyword arguments in `batch` besides the tokens: attention_mask, and
    token_type_ids where the tokenizer makes them (RoBERTa's does not). A batch may also carry
    labels and special_tokens_mask, which the model must not see."""
    return {key: batch[key] for key in ("attention_mask", "token_type_ids") if key in batch}


def word_embeddings(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """X = the word-embedding rows of input_ids, (B, N, D). Works on a DDP-wrapped model too."""
    return getattr(model, "module", model).get_input_embeddings()(input_ids)


def clean_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], loss_scale: float = 1.0,
               autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 4.1: ONE forward and ONE backward pass on the clean batch.

    The backward of `loss_scale * L` accumulates the parameter gradients of the clean loss (the
    caller adds the mixed loss's and steps the optimizer once) and, on the way, fills dL/dX_A.
    `autocast_dtype` (e.g. torch.bfloat16) runs the forward pass under autocast; the backward
    runs outside it, as torch recommends. The embedding lookup, and so I_A, stay fp32.
    Returns the clean loss L (detached) and the saliency map I_A = |dL/dX_A|, (B, N, D).
    """
    x = word_embeddings(model, batch["input_ids"])               # X_A: (B, N, D), in the graph
    x.retain_grad()  # keep dL/dX_A; x stays connected, so the embedding matrix still learns
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        logits = model(inputs_embeds=x, **model_inputs(batch)).logits  # (B, classes)
    loss = F.cross_entropy(logits.float(), batch["labels"])
    (loss * loss_scale).backward()
    # I_A = |dL/dX_A|; undo the scale so I is the derivative of L itself
    return loss.detach(), x.grad.abs() / loss_scale              # (B, N, D)


def saliency_map(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Section 4.1: I = |dL/dX|, (B, N, D), without touching any parameter's .grad.

    For analysis and figures. The model's train/eval mode is the caller's choice (figures use
    eval mode, so dropout does not perturb the map).
    """
    x = word_embeddings(model, batch["input_ids"]).detach().requires_grad_(True)  # (B, N, D)
    with torch.enable_grad():
        logits = model(inputs_embeds=x, **model_inputs(batch)).logits
        loss = F.cross_entropy(logits.float(), batch["labels"])
        (grad,) = torch.autograd.grad(loss, x)
    return grad.abs()
