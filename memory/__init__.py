"""Hierarchical memory of the live streams: L0 window policy, L1 events, L2 summaries, L3 notes, persistence,
recall. No model code: text embeddings and summaries come from injected callables.

Typical use by an engine (see memory.session for the full contract):

    memory = Memory(MemoryStore.open(data_dir), embed=embedder, summarize=lm_summarize)
    mem = memory.open_session(user_id, session_id, started_at=time.time())
    mem.add_frame("video", t, tokens)              # media lane, per frame
    mem.add_utterance("user", text, t0, t1)        # final transcript; then the reply as heard
    mem.turn_boundary(t)                           # VAD end of turn
    recall = mem.recall(embedder([q])[0], q, budget_tokens=1024)   # at the end of the user's turn
    prompt_slot = recall.text                      # or recall.items (time order, timestamps, features)
    mem.close()                                    # at session end; memory.close() at process end
"""

from memory.consolidator import Consolidator, ConsolidatorConfig, concat_summary
from memory.recall import RecallConfig, RecallQuery
from memory.segmenter import EventSegmenter, SegmenterConfig
from memory.session import Memory, MemoryConfig, MemoryWriteError, SessionMemory
from memory.store import MemoryStore, SchemaVersionError
from memory.types import Event, Note, Recall, RecallItem, Summary, Utterance
from memory.user_index import IndexConfig, UserIndex
from memory.window import SlotLayout, WindowConfig, WindowItem, WorkingWindow

__all__ = [
    "Consolidator", "ConsolidatorConfig", "Event", "EventSegmenter", "IndexConfig", "Memory", "MemoryConfig",
    "MemoryStore", "MemoryWriteError", "Note", "Recall", "RecallConfig", "RecallItem", "RecallQuery",
    "SchemaVersionError", "SegmenterConfig", "SessionMemory", "SlotLayout", "Summary", "UserIndex", "Utterance",
    "WindowConfig", "WindowItem", "WorkingWindow", "concat_summary",
]
