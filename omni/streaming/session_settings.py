"""How a session takes `session.update`: output modalities, instructions and voice (before the first reply the
engine session is reopened, and refused settings leave it as it was; after it, new instructions apply from the next
reply and a new voice is refused), and turn detection. `Session` (omni.streaming.session)
inherits these steps; they share its state, declared below, and run on the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omni.streaming.audio_in import AudioInState, EngineFeed
from omni.streaming.engine import EngineSession
from omni.streaming.events import RealtimeEvents, clip_text
from omni.streaming.reply_ends import Emit
from omni.streaming.session_config import SessionConfig, updated_turn_config
from omni.streaming.worker import DeviceWorker


class SettingsUpdates:
    """`session.update`, as steps of `Session`."""

    _engine_session: EngineSession | None
    _emit: Emit
    _feed: EngineFeed
    _turns: int
    _audio_state: AudioInState
    events: RealtimeEvents
    config: SessionConfig
    worker: DeviceWorker
    describe: Callable[[], dict[str, Any]]
    _open_engine_session: Callable[[], EngineSession]
    _attach_memory: Callable[[bool], None]

    async def _update(self, settings: dict[str, Any]) -> None:
        if "speech" in settings:
            self.config.speech = settings["speech"]
        if "instructions" in settings or "voice" in settings:
            # Before the first reply they are the engine session's opening prompt and voice: a change reopens it.
            # After it, reopening would drop the conversation: new instructions go to the engine session, which
            # follows them from the next reply on (EngineSession.set_instructions), and a new voice is refused as
            # OpenAI refuses it once the assistant has spoken (`cannot_update_voice`); unchanged values (a client
            # re-sending its whole session) are taken, and the rest of such an update applies.
            if self._turns == 0:
                if not await self._apply_engine_settings(settings):
                    return
            elif not await self._change_mid_conversation(settings):
                return
        if "user_id" in settings:
            if self._turns > 0 or self.config.user_fixed:
                why = "is the API key's user" if self.config.user_fixed else "can only be set before the first reply"
                self._emit(self.events.error("invalid_value", f"omni.user_id {why}", param="session.omni.user_id"))
                return
            self.config.user_id = settings["user_id"]
            await self.worker.run(self._attach_memory, True)
        if "turn_detection" in settings:
            td = settings["turn_detection"]
            if td is None:
                self.config.create_response = False
            else:
                try:
                    self._audio_state.detector.config = updated_turn_config(self._audio_state.detector.config, td)
                except ValueError as e:  # the protocol check should have caught it; never end the session
                    field = "session.turn_detection"
                    self._emit(self.events.error("invalid_value", f"turn_detection: {e}", param=field))
                    return
                self.config.create_response = td.get("create_response", True)
                self.config.interrupt_response = td.get("interrupt_response", True)
            self._feed.auto_end_turn = self.config.create_response
        self._emit(self.events.session_updated(self.describe()))

    async def _change_mid_conversation(self, settings: dict[str, Any]) -> bool:
        """Instructions and voice after the first reply; False (and an error event) if the voice was to change."""
        instructions, voice = self._engine_settings(settings)
        if voice != self.config.voice:
            field = settings.get("voice_field", "session.audio.output.voice")  # the full path (events.py)
            self._emit(self.events.error(
                "cannot_update_voice", "Cannot update the conversation's voice once the assistant has replied: the "
                "voice is chosen with the first reply (open a new session for another voice).", param=field))
            return False
        if instructions != self.config.instructions:
            assert self._engine_session is not None
            await self.worker.run(self._engine_session.set_instructions, instructions)
            self.config.instructions = instructions
        return True

    def _engine_settings(self, settings: dict[str, Any]) -> tuple[str | None, str | None]:
        """(instructions, voice) after `settings`: what they set, else what the session has."""
        return settings.get("instructions", self.config.instructions), settings.get("voice", self.config.voice)

    async def _apply_engine_settings(self, settings: dict[str, Any]) -> bool:
        """Reopen the engine session for new instructions or voice; False (and an error event) if it refused."""
        kept = self.config.instructions, self.config.voice
        wanted = self._engine_settings(settings)
        if wanted == kept:  # a reopen costs ~235 ms (embedded engine): only when something changed
            return True
        self.config.instructions, self.config.voice = wanted
        try:
            self._engine_session = await self.worker.run(self._reopen_engine)
        except ValueError as e:  # the engine refused a setting (an unknown voice): keep the session as it was
            self.config.instructions, self.config.voice = kept
            self._engine_session = await self.worker.run(self._reopen_engine)
            field = settings.get("voice_field") if "voice" in settings else "session.instructions"
            why = clip_text(str(e), 300)  # it may quote a client's huge value
            self._emit(self.events.error("invalid_value", f"{field}: {why}", param=field))
            return False
        finally:
            await self.worker.run(self._attach_memory, False)  # the new engine session reads the same lane
        return True

    def _reopen_engine(self) -> EngineSession:
        if self._engine_session is not None:
            self._engine_session.close()
        return self._open_engine_session()
