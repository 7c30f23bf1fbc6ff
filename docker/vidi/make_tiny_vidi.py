#!/usr/bin/env python3
"""Makes a tiny Vidi 1.5 checkpoint with random weights, of upstream's real architecture.

The real weights (about 20 GB) cannot be downloaded where this project is built and tested.
This checkpoint is built by upstream's own classes, so upstream's own loader
(`vidi.model.builder.load_pretrained_model`) and `vidi.eval.inference.ask` run on it unchanged:

  OUT/model/      config.json (model_type dattn_gemma2, a tiny DattnGemma2Config: 2 layers,
                  hidden 64), model.safetensors (every weight: Gemma 2, the SigLIP and Whisper
                  towers, the mm_rand_* adapters), generation_config.json, and a tokenizer built
                  here (Gemma's special tokens at Gemma's ids: <eos> 1, <bos> 2,
                  <start_of_turn> 106, <end_of_turn> 107, which upstream hard-codes as EOS;
                  Gemma's chat template; byte fallback)
  OUT/hf-cache/   a Hugging Face cache (HF_HOME) holding the towers upstream's config names,
                  `google/siglip2-so400m-patch14-384` and `openai/whisper-large-v3`, as tiny
                  random models with the real ones' input geometry: SigLIP with 27x27 patches
                  (384/14 in the real one; here 54/2), Whisper with 128 mel bins, 30 s windows
                  and 1500 positions.

The answers are nonsense (random weights); what this proves is that the real code path loads,
preprocesses the video and audio, generates, and that the wrapper parses what comes out.

  python3 make_tiny_vidi.py --upstream /path/to/Vidi1.5_9B --out /tmp/tiny-vidi
  # then: HF_HOME=/tmp/tiny-vidi/hf-cache VIDI_MODEL_PATH=/tmp/tiny-vidi/model ...

Needs torch, transformers 4.50 and upstream's imports (liger-kernel, deepspeed, decord, ...);
runs on CPU in about a minute. Deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

VISION_TOWER = "google/siglip2-so400m-patch14-384"
AUDIO_TOWER = "openai/whisper-large-v3"

# Gemma's special tokens at Gemma's ids (upstream sets eos_token_id = 107 itself).
SPECIAL_IDS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 106, "<end_of_turn>": 107}
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Merges so that the answers upstream parses ("0.12-0.34") are a few tokens, not many.
MERGE_WORDS = ["▁the", "▁of", "▁in", "▁video", "▁time", "▁segments", "0.", "-0.", ", "]


def build_tokenizer(out: Path):
    """A small Gemma-style BPE tokenizer (byte fallback, '▁' for spaces), saved to `out`."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import GemmaTokenizerFast

    vocab: dict[str, int] = {}
    for i in range(108):
        vocab[f"<unused{i}>"] = i
    vocab = {tok: i for tok, i in vocab.items() if i not in SPECIAL_IDS.values()}
    vocab.update(SPECIAL_IDS)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁" + "".join(chr(c) for c in range(33, 127)):
        if ch not in vocab:
            vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in MERGE_WORDS:
        word = word.replace(" ", "▁")
        cur = word[0]
        for ch in word[1:]:
            if cur + ch not in vocab:
                merges.append((cur, ch))
                vocab[cur + ch] = len(vocab)
            cur = cur + ch
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(list(SPECIAL_IDS))
    fast = GemmaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        add_bos_token=True,
        add_eos_token=False,
    )
    fast.chat_template = GEMMA_CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def _fake_commit(name: str) -> str:
    return hashlib.sha1(f"vidi-operator tiny {name}".encode()).hexdigest()


def put_in_cache(cache: Path, repo_id: str, files_dir: Path) -> Path:
    """Lays `files_dir` out as the Hugging Face cache entry of `repo_id` (HF_HOME/hub/...)."""
    repo = cache / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = _fake_commit(repo_id)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(files_dir.iterdir()):
        shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def build_towers(cache: Path) -> None:
    import torch
    from transformers import (
        SiglipConfig, SiglipImageProcessor, SiglipModel,
        WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
    )

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "siglip"
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=54, patch_size=2, num_channels=3)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=128, max_position_embeddings=16)
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
        SiglipImageProcessor(size={"height": 54, "width": 54}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(d)
        put_in_cache(cache, VISION_TOWER, d)

        d = Path(tmp) / "whisper"
        cfg = WhisperConfig(
            vocab_size=128, num_mel_bins=128, d_model=32, encoder_layers=1, encoder_attention_heads=2,
            decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1,
        )
        WhisperForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
        WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400).save_pretrained(d)
        put_in_cache(cache, AUDIO_TOWER, d)


def build_model(upstream: Path, model_dir: Path, vocab_size: int):
    import torch

    sys.path.insert(0, str(upstream))
    # Upstream's xattn.py imports flash_attn and asserts transformers' is_flash_attn_2_available(),
    # which is False without CUDA. Building weights needs neither: import upstream with the
    # plain-PyTorch flash-attn stand-in and that check answered True, then put the check back.
    fallback = str(Path(__file__).resolve().parent / "flash_attn_fallback")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        sys.path.insert(0, fallback)
    import transformers.utils as tf_utils

    real_check = tf_utils.is_flash_attn_2_available
    tf_utils.is_flash_attn_2_available = lambda: True
    try:
        from vidi.model.lmm.dattn.gemma import DattnGemma2Config, DattnGemma2ForCausalLM
        from vidi.model.mm_audio.whisper import WhisperAudioTower
        from vidi.model.mm_vision.siglip import SiglipVisionTower
    finally:
        tf_utils.is_flash_attn_2_available = real_check

    config = DattnGemma2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=8192, sliding_window=4096, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, pad_token_id=0, bos_token_id=2, eos_token_id=1,
        torch_dtype="bfloat16",
        # What upstream's training script (scripts/finetune.sh, vidi/train/train.py) sets.
        mm_vision_tower=VISION_TOWER, mm_vision_select_layer=-2, mm_image_aspect_ratio="resize",
        mm_image_pool_size=2, mm_audio_tower=AUDIO_TOWER, mm_audio_pool_size=5, mm_input_type="video",
        mm_std=0.028976401314139366, mm_splits=4, mm_time_interval=10000, mm_projector_type="mlp2x_gelu",
        loss_thres=0.1, train_rand=True, train_vis=False, train_aud=False, train_llm=True, use_cache=True,
    )
    config.architectures = ["DattnGemma2ForCausalLM"]
    # Upstream asserts flash_attention_2. Building on CPU: mark it chosen (transformers would
    # refuse FA2 without CUDA) and build the towers with eager attention, which changes no weight.
    config._attn_implementation_internal = "flash_attention_2"
    config._attn_implementation_autoset = True
    config._name_or_path = str(model_dir)  # where upstream's build_text_tokenizer reads the tokenizer

    originals = {}
    for cls in (SiglipVisionTower, WhisperAudioTower):
        originals[cls] = cls.__dict__["from_pretrained"] if "from_pretrained" in cls.__dict__ else None

        def eager(klass, *args, _orig=cls.from_pretrained.__func__, **kwargs):
            kwargs["attn_implementation"] = "eager"
            return _orig(klass, *args, **kwargs)

        cls.from_pretrained = classmethod(eager)
    try:
        model = DattnGemma2ForCausalLM(config)
    finally:
        for cls, orig in originals.items():
            if orig is None:
                del cls.from_pretrained
            else:
                cls.from_pretrained = orig
    model.to(torch.bfloat16)
    model.config._attn_implementation_internal = None  # not saved either way; the loader sets it
    model.save_pretrained(model_dir, safe_serialization=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, type=Path, help="upstream Vidi1.5_9B directory (holds vidi/)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (model/ and hf-cache/ are made in it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not (args.upstream / "vidi" / "model" / "builder.py").is_file():
        parser.error(f"--upstream {args.upstream}: no vidi/model/builder.py there")
    out = args.out.resolve()
    model_dir, cache = out / "model", out / "hf-cache"
    for d in (model_dir, cache):
        if d.exists():
            shutil.rmtree(d)
    model_dir.mkdir(parents=True)
    cache.mkdir(parents=True)
    # Offline, and the towers come from this cache: set before transformers is imported.
    os.environ["HF_HOME"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    import torch

    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(model_dir)
    build_towers(cache)
    vocab_size = ((len(tokenizer) + 63) // 64) * 64
    build_model(args.upstream.resolve(), model_dir, vocab_size)
    summary = {
        "model": str(model_dir),
        "hfHome": str(cache),
        "vocabSize": vocab_size,
        "towers": [VISION_TOWER, AUDIO_TOWER],
        "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
