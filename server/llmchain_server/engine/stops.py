"""Stop sequences on streamed text: text that might be the start of a stop sequence is held back
until it is clear, and the output ends before the first stop sequence found."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""  # everything generated so far
        self.sent = 0  # characters of `text` already released

    def feed(self, delta: str) -> tuple[str, bool]:
        """The text that can be released now, and whether a stop sequence was hit."""
        self.text += delta
        if not self.stops:
            out, self.sent = self.text[self.sent :], len(self.text)
            return out, False
        search_from = max(0, self.sent - max(len(s) for s in self.stops))
        hits = [i for s in self.stops if (i := self.text.find(s, search_from)) >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.sent : end] if end > self.sent else ""
            self.sent = max(self.sent, end)
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        end = len(self.text) - hold
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out, False

    def flush(self) -> str:
        """At the end without a stop: whatever was held back."""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out
