"""The seed document's text-classification example, with only the import line changed.

Usage: python examples/seed_classification.py PATH_TO_HF_CHECKPOINT_FOLDER
"""

import sys

from lmforge import AutoModelForSequenceClassification, AutoTokenizer

# 加载预训练模型和 tokenizer  (load the pretrained model and tokenizer)
model_name = sys.argv[1] if len(sys.argv) > 1 else "bert-base-uncased"
model = AutoModelForSequenceClassification.from_pretrained(model_name)
tokenizer = AutoTokenizer.from_pretrained(model_name)

# 对文本进行编码  (encode the text)
text = "This is a great movie!"
inputs = tokenizer(text, return_tensors="pt")

# 进行预测  (predict)
outputs = model(**inputs)
predictions = outputs.logits.argmax(-1)

# 打印预测结果  (print the prediction)
print(predictions)
