"""The TorchScript export's weights come from the module itself (passes/lib/weights.py): no copy, transposes folded lazily."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch


def test_weights_are_views_of_the_module_and_transposes_are_folded_exactly(tmp_path):
    from passes.lib import weights

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 6, bias=False)
            self.norm = torch.nn.Parameter(torch.randn(6))

        def forward(self, x):
            return self.proj(x) * self.norm

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 8)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      do_constant_folding=False, export_params=False, opset_version=17)
    model = ir.load(path)
    assert weights.attach(model, net) == 2
    assert [v.name for v in model.graph.inputs] == ["x"]
    norm = model.graph.initializers["norm"].const_value.numpy()
    assert np.shares_memory(norm, net.norm.detach().numpy())  # a view, not a copy
    assert weights.fold_transposes(model) == 1
    assert not any(n.op_type == "Transpose" for n in model.graph)
    assert "proj.weight" not in model.graph.initializers  # only its transpose is left, made when written
    assert isinstance(model.graph.initializers["proj.weight.T"].const_value, ir.LazyTensor)
    ir.save(model, tmp_path / "folded.onnx", external_data="folded.onnx.data", size_threshold_bytes=0)

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "folded.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], net(x).detach().numpy(), rtol=1e-6, atol=1e-6)
