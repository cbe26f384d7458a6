"""Training of the segmentation networks on labelled image folders."""
