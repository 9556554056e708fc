{#- Models go to the schema their folder names (staging, mart) as it is, not prefixed with the
    target's schema as dbt does by default. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ (custom_schema_name or target.schema) | trim }}
{%- endmacro %}
