import pytest
import torch
from transformers import AutoTokenizer

from dcl_dist.errors import ModelError
from dcl_dist.models.artifact import load_artifact, write_artifact
from dcl_dist.models.decoder import TsdaeDecoder, load_decoder, tie_to_encoder
from dcl_dist.models.encoder import SentenceEncoder, load_backbone, pool
from dcl_dist.models.head import ClassifierHead
from helpers import make_tiny_model


def test_mean_pooling_ignores_padding():
    states = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert pool(states, torch.tensor([[1, 1, 0]]), "mean").tolist() == [[2.0, 2.0]]
    assert pool(states, torch.tensor([[1, 1, 0]]), "cls").tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_tied_decoder_shares_the_encoder_body(tmp_path, model_type):
    path = make_tiny_model(tmp_path / model_type, model_type)
    encoder = SentenceEncoder(load_backbone(str(path)), "mean", n_dense=1)
    decoder = load_decoder(str(path))
    shared = tie_to_encoder(decoder, encoder.backbone)
    assert shared > 10
    enc_params = {id(p) for p in encoder.parameters()}
    dec_params = {n: p for n, p in decoder.named_parameters()}
    own = {n for n, p in dec_params.items() if id(p) not in enc_params}
    # only cross-attention and the LM head's own transform stay the decoder's
    assert own and all("crossattention" in n or n.split(".")[0] in ("cls", "lm_head") for n in own), own
    assert decoder.get_output_embeddings().weight is encoder.backbone.get_input_embeddings().weight
    attention = decoder.base_model.encoder.layer[0].attention.self
    assert attention.query is encoder.backbone.encoder.layer[0].attention.self.query


def test_decoder_is_causal_and_reads_the_sentence_vector(tiny_model):
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(tiny_model)), "mean", n_dense=1).eval()
    decoder = load_decoder(str(tiny_model))
    tie_to_encoder(decoder, encoder.backbone)
    tsdae = TsdaeDecoder(decoder).eval()
    ids = torch.tensor([[101, 2000, 2001, 2002, 2003, 102]])
    mask = torch.ones_like(ids)
    labels = torch.tensor([[2000, 2001, 2002, 2003, 102, -100]])
    sentence = torch.randn(1, encoder.hidden_size)
    with torch.no_grad():
        losses = tsdae(sentence, ids, mask, labels)
        changed = ids.clone()
        changed[0, 4] = 3000
        losses2 = tsdae(sentence, changed, mask, labels)
        losses3 = tsdae(sentence + 1.0, ids, mask, labels)
    assert losses.shape == (1, 6) and losses[0, 5] == 0 and (losses[0, :5] > 0).all()
    assert torch.allclose(losses[0, :4], losses2[0, :4])  # positions before the change do not see it
    assert not torch.allclose(losses[0, 4], losses2[0, 4])
    assert not torch.allclose(losses, losses3)  # the sentence vector is the memory


def test_artifact_round_trip_and_sentence_transformers(tmp_path, tiny_model):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(tiny_model)), "mean", n_dense=2).eval()
    head = ClassifierHead(encoder.hidden_size, 16, 3).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    path = tmp_path / "artifact"
    write_artifact(path, encoder, tokenizer, {"phase": "ft", "class_names": ["a", "b", "c"]}, 32, head)
    art = load_artifact(path)
    texts = ["book a table for two", "play some jazz music please"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = encoder(batch["input_ids"], batch["attention_mask"])
        back = art.encoder.eval()(batch["input_ids"], batch["attention_mask"])
        assert torch.allclose(head(ours), art.head.eval()(back), atol=1e-6)
    st = SentenceTransformer(str(path), device="cpu")
    theirs = torch.tensor(st.encode(texts))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert art.class_names == ["a", "b", "c"] and art.meta["max_length"] == 32


def test_incomplete_artifact_is_reported(tmp_path, tiny_model):
    encoder = SentenceEncoder(load_backbone(str(tiny_model)), "mean", n_dense=1)
    path = tmp_path / "artifact"
    write_artifact(path, encoder, AutoTokenizer.from_pretrained(str(tiny_model)), {"phase": "dae"}, 32)
    (path / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="2_Dense/model.safetensors is missing: the folder is incomplete"):
        load_artifact(path)
    with pytest.raises(ModelError, match="no such model folder"):
        load_artifact(tmp_path / "nope")
