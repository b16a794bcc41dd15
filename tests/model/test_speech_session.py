"""Spoken replies end to end on a tiny random Qwen2.5-Omni checkpoint (thinker.*, talker.*, token2wav.*,
spk_dict.pt), against transformers: the Thinker's greedy reply, then the Talker's greedy codes from inputs
built exactly as Qwen2_5OmniForConditionalGeneration.generate builds them from the Thinker's hidden states.
Our session builds the same inputs incrementally (prompt track prefilled turn by turn, one Thinker token per
codec step) and streams audio; closing `respond` mid-reply must leave the session usable and consistent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from omni.model.conversation import ReplyRecord, TokenText
from omni.model.lm.sampling import SamplingConfig
from omni.model.loaders.omni import LoadedThinker, load_thinker
from omni.model.loaders.talker_weights import SpeechModels, load_speech
from omni.model.prompt import SPEECH_SYSTEM_PROMPT
from omni.model.speech_session import SpeakingSession, SpeechSettings
from omni.model.token2wav.streaming import PCMChunk
from omni.model.voices import Voice, VoiceBank
from tests.model.omni_tiny import IDS, SPECIALS, save_tiny_omni
from tests.model.test_talker_parity import reference_talker

IM_END = SPECIALS["<|im_end|>"]
REPLY_TOKENS, CODES = 5, 40


@pytest.fixture(scope="module")
def omni(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, LoadedThinker, SpeechModels]:
    ref, d = save_tiny_omni(tmp_path_factory.mktemp("omni") / "ckpt")
    g = torch.Generator().manual_seed(0)
    VoiceBank(
        {
            "Chelsie": Voice(
                "Chelsie", IDS["spk_bos"], torch.randn(1, 16, generator=g), torch.randn(1, 60, 80, generator=g) - 4
            )
        }
    ).save(Path(d) / "spk_dict.pt")
    return ref, load_thinker(d), load_speech(d)


def _session(loaded: LoadedThinker, speech: SpeechModels) -> SpeakingSession:
    talker_sampling = speech.talker.cfg.sampling(temperature=0.0, max_new_tokens=CODES)
    settings = SpeechSettings(talker_sampling=talker_sampling, seed=0)
    return SpeakingSession(loaded.model, loaded.prompt, loaded.tokenizer, speech, settings)


def _turn(session: SpeakingSession, text: str) -> None:
    session.start_user_turn()
    session.add_text(text)
    session.end_user_turn()


THINKER_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=REPLY_TOKENS)


@pytest.mark.parametrize("with_audio", [False, True])
def test_respond_matches_reference_pipeline(omni: tuple[Any, LoadedThinker, SpeechModels], with_audio: bool) -> None:
    """With an audio prompt, the Talker must see the audio positions' embeddings zeroed and TMRoPE positions."""
    ref, loaded, speech = omni
    p = loaded.prompt
    mel = loaded.model.audio_features(0.1 * torch.randn(41600, generator=torch.Generator().manual_seed(3)), 16000)
    n_audio = loaded.model.encode_audio(mel).shape[0] if with_audio else 0
    media = p.audio(n_audio) if with_audio else []
    ids = p.system_turn(SPEECH_SYSTEM_PROMPT) + p.turn_start("user") + media + p.text("hi there")
    ids += p.generation_prompt()
    input_ids = torch.tensor([ids])
    kw: dict[str, Any] = {}
    if with_audio:
        kw = {"input_features": mel[None], "feature_attention_mask": torch.ones(1, mel.shape[1], dtype=torch.long)}
    with torch.no_grad():  # random weights rarely say <|im_end|>: stop on the first new token after 3 instead
        greedy = ref.thinker.generate(input_ids=input_ids, max_new_tokens=12, do_sample=False, eos_token_id=-1, **kw)
        g = greedy[0, len(ids) :].tolist()
        fresh = [t for k, t in enumerate(g) if k >= 1 and t not in g[:k]]  # first new token, preferably late
        stop = next((t for t in fresh if g.index(t) >= 3), fresh[0] if fresh else None)
        assert stop is not None, g
        out = ref.thinker.generate(
            input_ids=input_ids,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=stop,
            output_hidden_states=True,
            return_dict_in_generate=True,
            **kw,
        )
    generated = out.sequences[0, len(ids) :].tolist()
    assert generated[-1] == stop

    session = _session(loaded, speech)
    session.start_user_turn()
    if with_audio:
        session.begin_audio()
        session.push_audio_features(mel)
        session.end_audio()
    session.add_text("hi there")
    session.end_user_turn()
    events = list(session.respond(SamplingConfig(temperature=0.0, max_new_tokens=12), frozenset({stop})))
    end = events[-1]
    assert isinstance(end, ReplyRecord)
    assert end.token_ids == generated[:-1]

    # What Qwen2_5OmniForConditionalGeneration.generate hands the Talker.
    hs = out.hidden_states  # per step: (embeddings, layer outputs ..., final-norm output)
    embeds = hs[0][0].masked_fill((input_ids == IDS["audio"])[..., None], 0.0)
    prompt = hs[0][-1] + embeds
    reply = torch.cat([h[-1] + h[0] for h in hs[1:]], dim=1)  # generated tokens 0 .. n-2 as inputs
    table = ref.thinker.get_input_embeddings().weight
    specials = (table[IDS["spk_bos"]], table[IDS["tts_text_eos"]], table[IDS["tts_text_pad"]])
    text_ids = torch.cat([input_ids, torch.tensor([[IDS["spk_bos"], generated[0]]])], dim=1)
    rope = {"audio_feature_lengths": torch.tensor([mel.shape[1]])} if with_audio else {}
    with torch.no_grad():
        want_codes, _ = reference_talker(ref.talker, prompt, reply, specials, text_ids, CODES, **rope)
    want_codes = [c for c in want_codes if c not in (61, 62)]
    assert len(want_codes) > 10
    assert end.codes == want_codes

    audio = [e for e in events if isinstance(e, PCMChunk)]
    kinds = [type(e).__name__ for e in events]
    assert audio and ("TokenText" not in kinds or kinds.index("TokenText") < kinds.index("PCMChunk"))
    assert [a.start for a in audio] == [sum(a.samples.numel() for a in audio[:i]) for i in range(len(audio))]
    assert end.samples == sum(a.samples.numel() for a in audio) == len(end.codes) * 480
    timed = [e for e in events if not isinstance(e, PCMChunk)]
    assert all(a.t <= b.t for a, b in zip(timed, timed[1:]))
    # The Talker's prompt track holds exactly the Thinker's history (its speech track was dropped).
    assert session.talker_state.decoder.cache.length == session.state.cache.length


def test_cancel_mid_reply_leaves_session_consistent(omni: tuple[Any, LoadedThinker, SpeechModels]) -> None:
    _, loaded, speech = omni
    session = _session(loaded, speech)
    _turn(session, "tell me a story")
    reply = session.respond(SamplingConfig(temperature=0.0, max_new_tokens=20), frozenset({IM_END}))
    first = next(e for e in reply if isinstance(e, TokenText))
    assert first.text
    reply.close()  # barge-in
    assert session.talker_state.decoder.cache.length == session.state.cache.length
    assert session.talker_state.reply_start is None
    _turn(session, "ok")
    events = list(session.respond(THINKER_SAMPLING, frozenset({IM_END})))
    end = events[-1]
    assert isinstance(end, ReplyRecord) and end.samples == len(end.codes) * 480
    assert session.talker_state.decoder.cache.length == session.state.cache.length
