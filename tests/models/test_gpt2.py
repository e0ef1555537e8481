"""GPT-2 matches Hugging Face's PyTorch GPT-2 on padded batches, from both checkpoint formats."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from flax_cronos.models import gpt2  # noqa: E402
from flax_cronos.models.gpt2 import (CONFIGS, GPT2Features, hf_to_flax_path,  # noqa: E402
                                     load_pretrained, pool_last, pool_mean)
from flax_cronos.models.torch_weights import load_torch_state_dict  # noqa: E402

LENGTHS = (7, 4, 1)  # tokens per row of a right-padded [3, 7] batch


@pytest.fixture(scope="module")
def reference():
    """A random tiny ``GPT2LMHeadModel`` in eval mode."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, which init leaves at 1 and 0
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def folders(reference, tmp_path_factory):
    """The reference saved as safetensors (``save_pretrained``) and as ``pytorch_model.bin``."""
    safe = tmp_path_factory.mktemp("safetensors")
    reference.save_pretrained(safe, safe_serialization=True)
    assert (safe / "model.safetensors").is_file()
    binary = tmp_path_factory.mktemp("bin")
    reference.config.save_pretrained(binary)
    # transformers 5 always writes safetensors; this is what its .bin format was: a torch.save'd
    # state dict with the tied lm_head.weight, plus an attention buffer that must be skipped.
    state = reference.state_dict()
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.bool))
    torch.save(state, binary / "pytorch_model.bin")
    return {"safetensors": safe, "bin": binary}


def padded_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(len(LENGTHS), max(LENGTHS)))
    mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    return ids * mask, mask  # pad id 0


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hidden_states_and_logits_match_transformers(reference, folders, fmt):
    model, params = load_pretrained(folders[fmt])
    assert model.config == CONFIGS["tiny"]
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden_ref = reference.transformer(torch.tensor(ids), attention_mask=torch.tensor(mask))
        logits_ref = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    hidden = model.apply({"params": params}, jnp.asarray(ids, jnp.int32),
                         attention_mask=jnp.asarray(mask))
    logits = model.apply({"params": params}, jnp.asarray(ids, jnp.int32),
                         attention_mask=jnp.asarray(mask), method="logits")
    assert hidden.shape == (3, 7, 32) and hidden.dtype == jnp.float32
    assert logits.shape == (3, 7, 100)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real],
                               hidden_ref.last_hidden_state.numpy()[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits)[real], logits_ref.numpy()[real], atol=1e-5, rtol=0)


def test_padding_does_not_change_the_tokens_states(folders):
    model, params = load_pretrained(folders["safetensors"])
    ids, mask = padded_batch()
    full = model.apply({"params": params}, jnp.asarray(ids[1:2, :4]))
    padded = model.apply({"params": params}, jnp.asarray(ids[1:2]), attention_mask=jnp.asarray(mask[1:2]))
    np.testing.assert_allclose(padded[:, :4], full, atol=1e-5)


def test_torch_free_reader_matches_torch_load(folders, tmp_path):
    path = folders["bin"] / "pytorch_model.bin"
    ours, theirs = load_torch_state_dict(path), torch.load(path, weights_only=True)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)
    # views with an offset and strides, and other dtypes
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    tensors = {"t": base.t(), "offset": base[1:, 2:5], "half": base.half()[::2],
               "int": torch.arange(5), "bf16": torch.randn(3, 2).bfloat16()}
    torch.save(tensors, tmp_path / "views.bin")
    ours = load_torch_state_dict(tmp_path / "views.bin")
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(ours[name], tensor.float().numpy() if name == "bf16"
                                      else tensor.numpy(), err_msg=name)


def test_reader_refuses_arbitrary_objects(tmp_path):
    torch.save({"x": torch.zeros(2), "bad": print}, tmp_path / "bad.bin")
    with pytest.raises(Exception, match="refusing"):
        load_torch_state_dict(tmp_path / "bad.bin")


def test_hf_names_map_to_the_linen_tree(folders):
    assert hf_to_flax_path("h.0.attn.c_attn.weight") == ("h_0", "attn", "c_attn", "kernel")
    assert hf_to_flax_path("transformer.h.11.mlp.c_proj.bias") == ("h_11", "mlp", "c_proj", "bias")
    assert hf_to_flax_path("transformer.ln_f.weight") == ("ln_f", "scale")
    assert hf_to_flax_path("wpe.weight") == ("wpe", "embedding")
    for skipped in ("lm_head.weight", "h.3.attn.bias", "transformer.h.0.attn.masked_bias"):
        assert hf_to_flax_path(skipped) is None
    _, params = load_pretrained(folders["safetensors"])
    assert params["h_1"]["attn"]["c_attn"]["kernel"].shape == (32, 96)
    assert params["h_0"]["mlp"]["c_fc"]["kernel"].shape == (32, 128)


def test_pooling_matches_numpy():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0]])  # full, right, both sides
    np.testing.assert_allclose(pool_last(hidden, mask), hidden[[0, 1, 2], [4, 1, 3]])
    expected = np.stack([hidden[i][mask[i] == 1].mean(0) for i in range(3)])
    np.testing.assert_allclose(pool_mean(hidden, mask), expected, rtol=1e-6)
    np.testing.assert_allclose(pool_last(hidden), hidden[:, -1])
    np.testing.assert_allclose(pool_mean(hidden), hidden.mean(1), rtol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_features_backbone_takes_a_dict_batch(folders, pooling):
    model, params = load_pretrained(folders["safetensors"])
    ids, mask = (jnp.asarray(a) for a in padded_batch())
    hidden = model.apply({"params": params}, ids, attention_mask=mask)
    backbone = GPT2Features(model.config, pooling=pooling)
    features = jax.jit(backbone.apply)({"params": params}, {"input_ids": ids, "attention_mask": mask})
    assert features.shape == (3, 32)
    np.testing.assert_allclose(features, {"last": pool_last, "mean": pool_mean}[pooling](hidden, mask),
                               atol=1e-6)
    same, _ = load_pretrained(folders["bin"], pooling=pooling)
    assert same == backbone


def test_missing_folder_or_offline_hub_name_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="name_or_path"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="name_or_path"):
        load_pretrained("flax-cronos-test/no-such-gpt2")  # HF_HUB_OFFLINE=1 in conftest
    with pytest.raises(ValueError, match="config.json"):
        load_pretrained(tmp_path)  # a folder without weights


def test_named_configs():
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"} <= set(CONFIGS)
    assert (CONFIGS["gpt2-xl"].n_embd, CONFIGS["gpt2-xl"].n_layer, CONFIGS["gpt2-xl"].n_head) == (1600, 48, 25)
    with pytest.raises(ValueError, match="n_head"):
        gpt2.GPT2Config(n_embd=10, n_head=3)


def test_left_padding_masks_padded_keys(reference, folders):
    """Left padding is where the key mask matters (causality alone hides right padding)."""
    model, params = load_pretrained(folders["safetensors"])
    ids, mask = padded_batch()
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = reference.transformer(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                         position_ids=torch.tensor(positions)).last_hidden_state
    hidden = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                         position_ids=jnp.asarray(positions))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real], expected.numpy()[real], atol=1e-5, rtol=0)
    unmasked = model.apply({"params": params}, jnp.asarray(ids), position_ids=jnp.asarray(positions))
    assert np.abs(np.asarray(unmasked)[real] - np.asarray(hidden)[real]).max() > 1e-3


def test_save_pretrained_is_read_back_by_transformers_and_by_us(tmp_path):
    """Our own weights written in the HF layout: transformers' GPT2LMHeadModel gives our logits."""
    config = CONFIGS["tiny"]
    model = gpt2.GPT2(config)
    params = model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree.map(lambda a: (a + 0.05 * jax.random.normal(jax.random.key(4), a.shape))
                          .astype(jnp.float32), params)
    gpt2.save_pretrained(config, params, tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch()
    ours = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                       method="logits")
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], expected[real], atol=1e-5)
    loaded_model, loaded = load_pretrained(tmp_path)
    assert loaded_model.config == config
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree_util.tree_leaves_with_path(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
        assert hf_to_flax_path(gpt2.flax_to_hf_name(tuple(k.key for k in path))) == \
            tuple(k.key for k in path)
