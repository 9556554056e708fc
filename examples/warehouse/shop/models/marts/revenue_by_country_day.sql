-- Orders and revenue per country and day.
select
    c.country,
    o.day,
    count(*) as orders,
    sum(o.amount) as revenue
from {{ ref('stg_orders') }} as o
join {{ ref('stg_customers') }} as c using (customer_id)
group by all
order by c.country, o.day
