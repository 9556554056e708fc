-- The mart has one row per country and day: any returned row fails the test.
select country, day, count(*) as rows
from {{ ref('revenue_by_country_day') }}
group by country, day
having count(*) > 1
