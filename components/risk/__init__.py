"""Order risk (issue 16): what a store records of fraud as labels, order-time features point-in-time correct
as of each order's creation, and a model judged beside Shopify's own risk level and a rules baseline."""
