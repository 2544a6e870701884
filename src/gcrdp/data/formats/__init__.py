"""The format readers of :mod:`gcrdp.data`: one module per dataset layout, the shared
feature-array reader (:mod:`.featurearrays`, :mod:`.arrays`) and the finishing helpers every
loader ends with (:mod:`.build`). Importing a module registers its dataset."""
