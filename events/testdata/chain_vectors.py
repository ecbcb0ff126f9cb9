# Makes chain_vectors.json: events hashed as the Python control plane hashes
# them (iangreen74/leviathan leviathan/graph/events.py, Event.compute_hash,
# with pydantic's datetime parsing done by datetime.fromisoformat), chained
# in order. Run: python3 events/testdata/chain_vectors.py > events/testdata/chain_vectors.json
import hashlib, json
from datetime import datetime

def parse(ts):
    # pydantic keeps at most microseconds; fromisoformat takes up to 6 digits.
    if "." in ts:
        head, frac = ts.split(".", 1)
        n = 0
        while n < len(frac) and frac[n].isdigit():
            n += 1
        digits = frac[:n]
        zone = frac[len(digits):]
        ts = head + "." + (digits[:6].ljust(6, "0")) + zone
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))

def compute_hash(e, prev):
    canonical = {
        "event_id": e["event_id"],
        "event_type": e["event_type"],
        "timestamp": parse(e["timestamp"]).isoformat(),
        "actor_id": e.get("actor_id"),
        "payload": e["payload"],
        "prev_hash": prev,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()

events = [
    {"event_id": "e-1", "event_type": "attempt.created", "timestamp": "2026-01-15T10:00:00Z",
     "actor_id": "worker-1", "payload": {"attempt_id": "attempt-docs.v2-1a2b3c4d", "target_id": "t", "attempt_number": 1}},
    {"event_id": "e-2", "event_type": "attempt.started", "timestamp": "2026-01-15T10:00:01.5Z",
     "actor_id": None, "payload": {"z": 1, "a": {"y": [1, 2.5, -0.0, 1e16, 1e15, 0.0001, 0.00001, 123.456], "b": True, "c": None}}},
    {"event_id": "e-3", "event_type": "pr.created", "timestamp": "2026-01-15T10:00:02.123456789+02:00",
     "actor_id": "w", "payload": {"pr_url": "https://github.com/o/r/pull/7", "title": "caf\u00e9 \U0001F600 \"q\" \\ \n\t\x01\x7f", "n": -0, "big": 12345678901234567890}},
    {"event_id": "e-4", "event_type": "attempt.succeeded", "timestamp": "2026-01-15T10:00:03.000001",
     "actor_id": "w", "payload": {"nested": [{"b": 2, "a": 1}, [], {}], "dup": "last", "unicode_key_\u00e9": 1, "Z": 0}},
    # More keys than an insertion sort takes, keys alike in their first
    # eight bytes, and strings whose special bytes fall at every place of
    # an eight-byte word.
    {"event_id": "e-5", "event_type": "backlog.edited", "timestamp": "2026-01-15T10:00:04Z",
     "actor_id": "backlog-edit", "payload": dict(
        [("k%02d" % i, i) for i in range(19, -1, -1)] +
        [("prefix_same_b", 1), ("prefix_same_a", 2), ("prefix_same_", 3), ("prefix_s", 4), ("prefix_same_\u00e9", 5), ("prefix_same\x00", 6)] +
        [("s%d" % i, "abcdefghijklmnop"[:i] + c + "qrstuvwxyz") for i in range(9) for c in ["\"", "\\", "\x1f", "\x7f", "\u00e9"]][:45])},
]
prev = None
out = []
for e in events:
    h = compute_hash(e, prev)
    out.append({"event": e, "hash": h})
    prev = h
# The payloads as JSON text too, spelled with a repeated key and spacing.
out[3]["payload_json"] = '{ "dup": "first", "nested": [ {"b":2,"a":1}, [ ], { } ], "dup": "last", "unicode_key_\\u00e9": 1, "Z": 0 }'
# The same payload with a key repeated: the last value counts.
out[4]["payload_json"] = json.dumps(events[4]["payload"]).replace('"k19": 19', '"k19": "first", "k19": 19', 1)
print(json.dumps(out, indent=1))
