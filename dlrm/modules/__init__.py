"""The model: DLRM's arches (dense, sparse, interaction, over), the lookup kernels and the tables' layout."""
