"""The OpenAI API's request bodies (the fields this server reads; others are ignored) and its error shape."""
from __future__ import annotations

from typing import Any, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ApiError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Sampled(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)                 # not OpenAI's; as vLLM takes it
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)                            # one choice per prompt
    presence_penalty: float = Field(0.0, ge=0, le=0)         # not supported: 0 only
    frequency_penalty: float = Field(0.0, ge=0, le=0)
    logprobs: Any = None

    def stops(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise ApiError(400, f"stop: {len(stop)} strings is not allowed; allowed: at most 4", "stop")
        return stop


class CompletionRequest(_Sampled):
    prompt: Union[str, List[str], List[int], List[List[int]]]  # text, or token ids (as lm-eval sends them)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)  # the chosen token's and this many likeliest, per position


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Any = None  # a string, null, or a list of text parts {"type": "text", "text": "..."}

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        if content is None or isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise ValueError("a string, null or a list of text parts")
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"text parts ({{'type': 'text', 'text': ...}}); part {i} is {kind!r}")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"text parts whose text is a string; part {i}'s is {type(part.get('text')).__name__}")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p["text"] for p in self.content)
        return self.content or ""


class ChatRequest(_Sampled):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: Union[str, List[str]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
