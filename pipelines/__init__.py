"""KFP pipelines built from storeflow components, and the tools that compile, run and submit them."""
