"""Request bodies of the server; pydantic turns anything invalid into a 422 with the reason."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Effort = Literal["low", "medium", "high"]
MAX_TOKENS = 32768         # beyond any model here: 422; the server's own, lower limit gives 400
DEFAULT_MAX_TOKENS = 256


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    # GPT-OSS reasoning of an earlier assistant turn; the template drops it except at the end.
    thinking: str | None = None


class ChatRequest(BaseModel):
    """OpenAI chat.completions; unknown OpenAI fields are accepted and ignored."""
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    reasoning_effort: Effort = "medium"
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role not in ("user", "system", "developer"):
            raise ValueError("the last message must be from the user")
        return messages

    def message_dicts(self) -> list[dict]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def requested_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    def generation_settings(self):
        import random

        from runner.infer.generation import GenerationSettings
        return GenerationSettings(
            max_new_tokens=self.requested_tokens(),
            temperature=self.temperature, top_p=self.top_p, do_sample=self.temperature > 0,
            seed=self.seed if self.seed is not None else random.randrange(2**31))


class GenerateRequest(BaseModel):
    """The original notebook's POST /generate body."""
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    reasoning_effort: Effort = "medium"
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS)

    def as_chat(self) -> ChatRequest:
        return ChatRequest(messages=[ChatMessage(role="user", content=self.prompt)],
                           reasoning_effort=self.reasoning_effort, max_tokens=self.max_tokens,
                           temperature=0.7, top_p=0.9)
