"""Chat templates the trainer supplies when a tokenizer has none.

CHAT_TEMPLATE is ChatML with generation markers, so the loss can cover only what the
assistant produces, and with tool use in the Hermes / Qwen2.5 convention (what most open
tool-calling models are trained on, so a model tuned with it is served by the usual
Hermes tool parsers):

- the row's `tools` are listed in the system turn, between <tools></tools>, one JSON object
  per line (after the row's own system prompt, when it has one);
- an assistant turn's `tool_calls` follow its text as
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, inside the generation
  markers: everything the assistant produces, text and calls, carries loss, so a
  tool-call-only answer is trained like any other (arguments given as a JSON string are
  written as they are);
- `tool` turns (the results) are rendered as a user turn holding one
  `<tool_response>\\n...\\n</tool_response>` block per result (consecutive results share
  the turn), so they are context, never a target.

A conversation without tools or tool calls renders byte for byte as plain ChatML.
"""

TOOLS_PREAMBLE = (
    "You may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>"
)
TOOLS_POSTAMBLE = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>'
)

CHAT_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '" + TOOLS_PREAMBLE + "' }}"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '" + TOOLS_POSTAMBLE + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and tools and loop.first %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] or '' }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set function = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": ' }}{{ function['name'] | tojson }}"
    "{{ ', \"arguments\": ' }}"
    "{% set arguments = function['arguments'] if function['arguments'] is defined else {} %}"
    "{% if arguments is string %}{{ arguments }}"
    "{% else %}{{ arguments | tojson }}{% endif %}"
    "{{ '}\\n</tool_call>' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{ '<|im_end|>\\n' }}{% endif %}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
