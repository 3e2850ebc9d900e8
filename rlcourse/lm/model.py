"""The course's small LM: ``LlamaForCausalLM`` presets, device choice, safetensors save/load.

Two presets of transformers' ``LlamaConfig`` (RMSNorm, rotary positions, SwiGLU MLP, tied
input/output embeddings):

=======  ======  ======  =====  ============  =======  ===========================
preset   hidden  layers  heads  intermediate  context  parameters (53-token vocab)
=======  ======  ======  =====  ============  =======  ===========================
tiny     128     4       4      384           64       859,904 (CPU, tests, notebooks)
small    512     8       8      1536          128      27,298,816 (a GPU)
=======  ======  ======  =====  ============  =======  ===========================

``load_model`` takes either a preset name (a fresh model with the course tokenizer) or a
local directory holding any Hugging Face causal LM (safetensors weights, no remote code),
so a user with downloaded weights can swap in a real model. Nothing here touches the network.

Attention: ``"sdpa"`` (PyTorch's fused scaled-dot-product attention). On a 2-core CPU and the
tiny preset (256 rows, ``benchmarks/lm_speed.py``) it was measured against ``"eager"``: on a
par within the noise of a shared machine (sampling 49-56 ms either way, a training
forward+backward 125-142 ms either way). sdpa is the fast path on a GPU, so it is the default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from rlcourse._validate import integer

from .quiet import quiet_transformers
from .tokenizer import build_tokenizer, load_tokenizer


@dataclass(frozen=True)
class Preset:
    """Architecture sizes of a model preset (the vocabulary size comes from the tokenizer)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=384, max_position_embeddings=64),
    "small": Preset(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                    intermediate_size=1536, max_position_embeddings=128),
}

ATTN_IMPLEMENTATION = "sdpa"


def _check_preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    return PRESETS[preset]


def model_config(preset: str, vocab_size: int, *, pad_token_id: int = 0, bos_token_id: int = 1,
                 eos_token_id: int = 2) -> LlamaConfig:
    """The ``LlamaConfig`` of a preset for a vocabulary of ``vocab_size`` tokens."""
    p = _check_preset(preset)
    integer("vocab_size", vocab_size, 4)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        num_key_value_heads=p.num_attention_heads,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        attn_implementation=ATTN_IMPLEMENTATION,
        **asdict(p),
    )
    return cfg


def build_model(preset: str = "tiny", vocab_size: int | None = None, seed: int = 0, *,
                tokenizer=None) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` of the given preset (float32, on the CPU).

    Args:
        preset: ``"tiny"`` or ``"small"``.
        vocab_size: number of tokens; default: that of ``tokenizer`` or of :func:`build_tokenizer`.
        seed: seeds ``torch.manual_seed`` for the initial weights (same seed -> same weights).
        tokenizer: optional, supplies the vocabulary size and the pad/bos/eos ids.
    """
    _check_preset(preset)
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    if vocab_size is None:
        vocab_size = len(tok)
    cfg = model_config(preset, vocab_size, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def pick_device(override: str | torch.device | None = None) -> torch.device:
    """The device to use: ``override`` if given, else CUDA, then Apple MPS, then the CPU."""
    if override is not None:
        try:
            dev = torch.device(override)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"override must name a torch device such as 'cpu' or 'cuda', got {override!r}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"override={override!r} but CUDA is not available on this machine")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"override={override!r} but MPS is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def save_model(model: PreTrainedModel, tokenizer, directory: str | os.PathLike) -> str:
    """Save the model (``model.safetensors`` + ``config.json``) and its tokenizer into ``directory``."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(directory)  # safetensors is the only format transformers 5 writes
        tokenizer.save_pretrained(directory)
    return directory


#: Files that hold a tokenizer (any one is enough for ``AutoTokenizer``).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
#: Weight files that are pickles (they can run code when loaded): never loaded here.
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def check_model_dir(directory: str | os.PathLike) -> str:
    """Check that ``directory`` holds a Hugging Face causal LM that :func:`load_model` can load; return it.

    Looks only at the files (nothing is loaded or run): ``config.json`` naming a causal-LM
    ``model_type`` that this transformers implements (a model that needs its own code, declared by
    ``auto_map``, is refused: ``trust_remote_code`` is never set), ``.safetensors`` weights (a
    checkpoint of pickled ``.bin`` files only is refused: unpickling can run code), and tokenizer
    files. Raises ``ValueError`` naming the path and what is wrong.
    """
    import json

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = os.fspath(directory)
    if not os.path.exists(path):
        raise ValueError(f"model directory {path!r} does not exist (models are only loaded from local "
                         "directories; nothing is downloaded)")
    if not os.path.isdir(path):
        raise ValueError(f"model directory {path!r} is a file, not a directory")
    files = os.listdir(path)
    if "config.json" not in files:
        raise ValueError(f"model directory {path!r} has no config.json: not a Hugging Face model directory, which "
                         "holds config.json, .safetensors weights and tokenizer files (write one with "
                         "model.save_pretrained(directory) and tokenizer.save_pretrained(directory))")
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ValueError(f"model directory {path!r}: config.json cannot be read ({e})") from e
    model_type, auto_map = config.get("model_type"), config.get("auto_map")
    if model_type not in CONFIG_MAPPING_NAMES:
        why = (f"it declares its own code (auto_map {sorted(auto_map)}), which is never run here "
               "(trust_remote_code=False)" if auto_map else "transformers does not implement it")
        raise ValueError(f"model directory {path!r}: model_type {model_type!r} is not a model type of "
                         f"transformers {transformers.__version__}; {why}")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"model directory {path!r}: model_type {model_type!r} has no causal-LM class in "
                         "transformers (AutoModelForCausalLM); only causal LMs can be trained here")
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if f.endswith(PICKLE_WEIGHTS))
        if pickles:
            raise ValueError(f"model directory {path!r} holds only pickled weights {pickles} and no .safetensors: "
                             "only safetensors are loaded (unpickling can run code). Convert once, where you "
                             "trust the file: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)")
        raise ValueError(f"model directory {path!r} holds no .safetensors weights")
    if not any(f in files for f in TOKENIZER_FILES):
        raise ValueError(f"model directory {path!r} has no tokenizer (none of {list(TOKENIZER_FILES)}): save "
                         "the model's tokenizer into the same directory with tokenizer.save_pretrained(directory)")
    return path


def load_model(path_or_preset: str | os.PathLike, device: str | torch.device | None = None, *,
               seed: int = 0, dtype: torch.dtype | None = None, chat_template: bool = True):
    """Load ``(model, tokenizer)`` from a preset name or from a local Hugging Face directory.

    * a preset name (``"tiny"``, ``"small"``): a fresh model with :func:`build_tokenizer`;
    * a directory (checked by :func:`check_model_dir`): ``AutoModelForCausalLM.from_pretrained(dir,
      local_files_only=True, use_safetensors=True, trust_remote_code=False)`` and its own tokenizer
      (:func:`~rlcourse.lm.tokenizer.load_tokenizer`: padding on the left; a missing pad token set
      to the eos token, with a warning). Any causal LM saved by transformers works.

    Prompts are then encoded by :func:`rlcourse.lm.rollout.encode_prompts`: through the tokenizer's
    chat template when it has one, else as raw text. ``chat_template=False`` removes the template
    from the returned tokenizer (raw prompts; a model saved with it is saved without the template,
    so it is prompted as it was trained).

    Never contacts the network. Raises ``ValueError`` if ``path_or_preset`` is neither a preset
    nor a loadable model directory (naming the path and what is wrong).

    Args:
        device: where to put the model; ``None`` -> :func:`pick_device`.
        seed: initial weights of a preset model.
        dtype: optional dtype to load the weights in (default: as stored / float32).
        chat_template: keep the tokenizer's chat template (directories only).
    """
    dev = pick_device(device)
    name = os.fspath(path_or_preset) if isinstance(path_or_preset, os.PathLike) else path_or_preset
    if not isinstance(name, str):
        raise ValueError(f"path_or_preset must be a preset name or a directory, got {path_or_preset!r}")
    if name in PRESETS and not os.path.isdir(name):
        tok = build_tokenizer()
        model = build_model(name, len(tok), seed, tokenizer=tok)
        if dtype is not None:
            model = model.to(dtype)
        return model.to(dev), tok
    if not os.path.exists(name):
        raise ValueError(
            f"path_or_preset={name!r} is neither a preset {list(PRESETS)} nor an existing local directory "
            "(models are only loaded from local files; nothing is downloaded)"
        )
    check_model_dir(name)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                name, local_files_only=True, use_safetensors=True, trust_remote_code=False, **kwargs
            )
    except Exception as e:  # a damaged file: safetensors, json errors alike
        raise ValueError(f"the model in {name!r} cannot be loaded ({type(e).__name__}: {str(e)[:200]}); its files "
                         "are damaged or incomplete: delete the directory and train or save it again") from e
    try:
        tok = load_tokenizer(name)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"the tokenizer in {name!r} cannot be loaded ({type(e).__name__}: {str(e)[:200]})") from e
    if not chat_template:
        tok.chat_template = None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(dev), tok
