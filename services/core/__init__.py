"""Domain services: what the API does, free of HTTP. They raise ``DomainError``s only."""
