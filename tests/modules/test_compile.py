"""`model.compile=true`: the inner modules are compiled in place, so checkpoints keep their parameter names."""

from __future__ import annotations

from storyreason.data.tokenizer import WordTokenizer
from storyreason.modules.autoencoder import AutoencoderModule
from storyreason.modules.multimodal import MultimodalStoryModule

AE = {"image_size": 32, "channels": [8, 16], "latent_dim": 64}
STORY = {"embed_dim": 8, "text_dim": 8, "fusion_dim": 8, "state_dim": 8, "decoder_dim": 8, "heads": 2, "latent_hidden": 8}
VOCAB = WordTokenizer(["<pad>", "<bos>", "<eos>", "<unk>", "red"]).to_json()


def test_compiled_autoencoder_checkpoint_loads_into_an_eager_module() -> None:
    compiled = AutoencoderModule(AE, compile=True)
    assert compiled.autoencoder.encoder._compiled_call_impl is not None
    eager = AutoencoderModule(AE)
    assert eager.autoencoder.encoder._compiled_call_impl is None
    eager.load_state_dict(compiled.state_dict())  # strict: the same names


def test_compiled_story_module_keeps_parameter_names() -> None:
    compiled = MultimodalStoryModule(VOCAB, AE, STORY, compile=True)
    eager = MultimodalStoryModule(VOCAB, AE, STORY)
    assert compiled.story.latent_head._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
