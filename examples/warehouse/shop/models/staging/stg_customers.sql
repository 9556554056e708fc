-- Customers with their country as an upper-case code.
select
    customer_id::bigint as customer_id,
    name,
    upper(trim(country)) as country
from {{ source('raw', 'customers') }}
