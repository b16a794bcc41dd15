"""Hierarchical memory of the live streams: L0 window policy, L1 events, L2 summaries, L3 notes, persistence,
recall. No model code: text embeddings, summaries and feature vectors come in as arrays or injected callables.

How an engine uses it (one `Memory` per server process, one `SessionMemory` per session):

    memory = Memory(MemoryStore.open(data_dir_or_postgres_url), embed=text_embedder, summarize=lm_summarize)
    mem = memory.open_session(user_id, session_id, started_at=time.time())  # user_id None: anonymous
    # media/worker lane, as inputs arrive (times: seconds on the session's media clock):
    mem.add_frame("video", t, tokens)             # [N, D] pooled encoder tokens of a frame (or an audio block)
    mem.add_utterance("user", transcript, t0, t1) # final transcript; later the reply as heard ("assistant")
    mem.turn_boundary(t)                          # VAD end of turn
    evict = mem.admit(WindowItem("text", n_tokens, t, text, "user"))  # what entered the cache -> what to drop
    # or, for a cache that evicts by position (sinks + ring; the engines' KVCache.watch calls slide):
    mem.track(WindowItem("text", n_tokens, t, text, "user", start=cache_index))   # L0 holds it
    mem.slide(edge)                               # the window starts at `edge` now: what starts below goes below
    # end of the user's turn (or a text turn), before the reply:
    recall = mem.recall(text_embedder([q])[0], q, budget_tokens=1024, lanes={"video": q_vec})
    slot = recall.text   # the prompt's recalled-memory slot; recall.items carry times and evidence features
    mem.close()          # session end; memory.close() at process end

`embed(texts) -> [n, E]` float32 (omni/model/embedded/text_embedding.TextEmbedder for the embedded engine);
`summarize(texts) -> str` is called from a low-priority background thread (omni.memory.consolidator).
"""

from omni.memory.consolidator import Consolidator, ConsolidatorConfig, concat_summary
from omni.memory.recall import RecallConfig, RecallQuery
from omni.memory.segmenter import EventSegmenter, SegmenterConfig
from omni.memory.session import Memory, MemoryConfig, MemoryWriteError, SessionMemory
from omni.memory.store import MemoryStore, SchemaVersionError, default_memory_dir
from omni.memory.types import Event, Note, Recall, RecallItem, Summary, Utterance
from omni.memory.user_index import IndexConfig, UserIndex
from omni.memory.window import SlotLayout, WindowConfig, WindowItem, WorkingWindow

__all__ = [
    "Consolidator", "ConsolidatorConfig", "Event", "EventSegmenter", "IndexConfig", "Memory", "MemoryConfig",
    "MemoryStore", "MemoryWriteError", "Note", "Recall", "RecallConfig", "RecallItem", "RecallQuery",
    "SchemaVersionError", "SegmenterConfig", "SessionMemory", "SlotLayout", "Summary", "UserIndex", "Utterance",
    "WindowConfig", "WindowItem", "WorkingWindow", "concat_summary", "default_memory_dir",
]
