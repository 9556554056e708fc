-- Paid orders, typed, each once (exports repeat rows).
select distinct
    order_id::bigint as order_id,
    customer_id::bigint as customer_id,
    cast(ordered_at as date) as day,
    amount::decimal(12, 2) as amount
from {{ source('raw', 'orders') }}
where status <> 'cancelled'
