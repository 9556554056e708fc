select * from {{ ref('revenue_by_country_day') }} where revenue <= 0
