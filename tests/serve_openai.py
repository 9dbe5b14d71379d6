"""wick serve through the official `openai` Python client (run by tests/serve.rs).

Usage: serve_openai.py BASE_URL API_KEY
Checks models.list, a greedy chat completion, the same streamed, `stop`, `max_tokens`, and a
text completion; exits non-zero (an assertion) on the first mismatch.
"""

import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)

models = client.models.list()
ids = [m.id for m in models.data]
assert len(ids) == 1, ids
model = ids[0]

messages = [{"role": "user", "content": "What is the capital of France?"}]
full = client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0
)
content = full.choices[0].message.content
assert full.choices[0].message.role == "assistant"
assert content, full
assert full.usage.completion_tokens <= 8, full.usage
assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

# Streamed: the deltas add up to the same greedy answer.
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == content, (text, content)
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finish == [full.choices[0].finish_reason], finish
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
# Prefix reuse, in OpenAI's field: the same prompt again reuses all of it but the last token.
assert full.usage.prompt_tokens_details.cached_tokens == 0, full.usage
cached = chunks[-1].usage.prompt_tokens_details.cached_tokens
assert cached == full.usage.prompt_tokens - 1, chunks[-1].usage

# max_tokens cuts the answer: finish_reason "length".
short = client.chat.completions.create(
    model=model, messages=messages, max_tokens=2, temperature=0
)
assert short.choices[0].finish_reason == "length", short
assert short.usage.completion_tokens == 2, short.usage

# stop: the answer ends before the stop text, which is not included.
cut = len(content) // 2
stop = content[cut : cut + 2]
stopped = client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, stop=[stop]
)
assert stopped.choices[0].message.content == content[: content.find(stop)], (stopped, stop)
assert stopped.choices[0].finish_reason == "stop"

done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
assert done.choices[0].text, done
assert done.usage.completion_tokens <= 4

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=1)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass

print("openai client: ok", repr(content))
