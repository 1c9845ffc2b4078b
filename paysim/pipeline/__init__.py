"""The transactional pipeline: the service loop, the service registry, the three services, webhook
dispatch, and everything kept in Redis (store)."""
