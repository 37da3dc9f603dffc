//! shardalloc
