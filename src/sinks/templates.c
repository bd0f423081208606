/*
 * templates.c — the chat templates mergekit bundles (the .jinja files of mergekit/_data/chat_templates), by name.
 *
 * DESIGN
 *   `chat_template: NAME` puts the text of mergekit's NAME.jinja, byte for
 *   byte, into the output's tokenizer_config.json; these strings are that
 *   data (Jinja text is not executed by alloy).
 */
#include "core/internal.h"
#include "sinks/output.h"

static const struct { const char *name, *text; } g_templates[] = {
    {"alpaca",
     "{{ (messages|selectattr('role', 'equalto', 'system')|list|last).content|trim if "
     "(messages|selectattr('role', 'equalto', 'system')|list) else '' }}\n"
     "\n"
     "{% for message in messages %}\n"
     "{% if message['role'] == 'user' %}\n"
     "### Instruction:\n"
     "{{ message['content']|trim -}}\n"
     "{% if not loop.last %}\n"
     "\n"
     "\n"
     "{% endif %}\n"
     "{% elif message['role'] == 'assistant' %}\n"
     "### Response:\n"
     "{{ message['content']|trim -}}\n"
     "{% if not loop.last %}\n"
     "\n"
     "\n"
     "{% endif %}\n"
     "{% elif message['role'] == 'user_context' %}\n"
     "### Input:\n"
     "{{ message['content']|trim -}}\n"
     "{% if not loop.last %}\n"
     "\n"
     "\n"
     "{% endif %}\n"
     "{% endif %}\n"
     "{% endfor %}\n"
     "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}\n"
     "### Response:\n"
     "{% endif %}\n"},
    {"chatml",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
     "'<|im_end|>' + '\\n'}}{% endfor %}\n"
     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}\n"},
    {"exaone",
     "{% for message in messages %}\n"
     "    {% if loop.first and message['role'] != 'system' %}\n"
     "        {{ '[|system|][|endofturn|]\\n' }}\n"
     "    {% endif %}\n"
     "    {{ '[|' + message['role'] + '|]' + message['content'] }}\n"
     "    {% if message['role'] == 'user' %}\n"
     "        {{ '\\n' }}\n"
     "    {% else %}\n"
     "        {{ '[|endofturn|]\\n' }}\n"
     "    {% endif %}\n"
     "{% endfor %}\n"
     "{% if add_generation_prompt %}\n"
     "    {{ '[|assistant|]' }}\n"
     "{% endif %}\n"},
    {"llama3",
     "{% set loop_messages = messages %}\n"
     "{% for message in loop_messages %}\n"
     "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
     "message['content'] | trim + '<|eot_id|>' %}\n"
     "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}\n"
     "{{ content }}\n"
     "{% endfor %}\n"
     "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}\n"},
    {"mistral",
     "{%- if messages[0]['role'] == 'system' %}\n"
     "    {%- set system_message = messages[0]['content'] %}\n"
     "    {%- set loop_messages = messages[1:] %}\n"
     "{%- else %}\n"
     "    {%- set loop_messages = messages %}\n"
     "{%- endif %}\n"
     "\n"
     "{{- bos_token }}\n"
     "{%- for message in loop_messages %}\n"
     "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
     "        {{- raise_exception('After the optional system message, conversation roles must "
     "alternate user/assistant/user/assistant/...') }}\n"
     "    {%- endif %}\n"
     "    {%- if message['role'] == 'user' %}\n"
     "        {%- if loop.first and system_message is defined %}\n"
     "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
     "        {%- else %}\n"
     "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
     "        {%- endif %}\n"
     "    {%- elif message['role'] == 'assistant' %}\n"
     "        {{- ' ' + message['content'] + eos_token}}\n"
     "    {%- else %}\n"
     "        {{- raise_exception('Only user and assistant roles are supported, with the exception "
     "of an initial optional system message!') }}\n"
     "    {%- endif %}\n"
     "{%- endfor %}\n"},
};

const char *alloy_chat_template_builtin(const char *name)
{
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_templates); i++)
        if (strcmp(g_templates[i].name, name) == 0) return g_templates[i].text;
    return NULL;
}
