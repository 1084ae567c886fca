"""Request errors the engines raise and the ingress turns into status codes."""


class InputTooLong(ValueError):
    """A request over the configured token limits (HTTP 413)."""

    def __init__(self, what: str, tokens: int, limit: int) -> None:
        super().__init__(f"{what} has {tokens} tokens; the limit is {limit}")
        self.tokens, self.limit = tokens, limit


class SettingsTooHigh(ValueError):
    """A request asked for more than the configuration allows (HTTP 422)."""
